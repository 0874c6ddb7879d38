// pulumi-language-python for the test suite: the Python language host the Pulumi CLI starts to run a Python
// program (`pulumi up` in a directory whose Pulumi.yaml says `runtime: python`) and a Python policy pack
// (`--policy-pack`).
//
// Why it exists: Pulumi's own language host is a Go module of its own
// (github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3) that the module proxy of this project's
// machines does not serve, while the SDK module it is built on (github.com/pulumi/pulumi/sdk/v3) is served. This
// host is written here against that SDK: the same gRPC contract (pulumirpc.LanguageRuntime), the SDK's own Python
// toolchain code to find and validate the virtual environment that Pulumi.yaml names, and the SDK's policy proxy
// for policy packs. It implements what `pulumi install|preview|up|destroy --policy-pack` call; code generation
// (convert, import, package gen) is refused as unimplemented.
//
// The program itself runs in a child process, `python run_program.py ...` with the project's virtualenv, so that
// the program sees exactly the environment `pulumi install` made for it.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	sdk "github.com/pulumi/pulumi/sdk/v3"
	"github.com/pulumi/pulumi/sdk/v3/go/common/apitype"
	"github.com/pulumi/pulumi/sdk/v3/go/common/util/cmdutil"
	"github.com/pulumi/pulumi/sdk/v3/go/common/util/rpcutil"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"github.com/pulumi/pulumi/sdk/v3/python/toolchain"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"
)

// Version is stamped at build time (tests/cluster/build.py) with the SDK version this host is built on; a hash of
// this directory's sources names the directory the build goes to.
var Version = "dev"

// The runner script is installed next to this binary.
const runnerName = "run_program.py"

// Exit code of the runner when the program failed and already logged why (a RunError): the engine then shows that
// message alone, without "program exited with non-zero exit code".
const exitAfterLoggedError = 32

func main() {
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.String("tracing", "", "accepted for the CLI's sake; tracing is not emitted")
	flag.Parse()
	if *showVersion {
		fmt.Println(Version)
		return
	}
	self, err := os.Executable()
	if err != nil {
		cmdutil.Exit(fmt.Errorf("cannot find this executable: %w", err))
	}
	runner := filepath.Join(filepath.Dir(self), runnerName)
	if _, err := os.Stat(runner); err != nil {
		cmdutil.Exit(fmt.Errorf("missing %s next to the language host: %w", runnerName, err))
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	cancel := make(chan bool)
	go func() { <-ctx.Done(); close(cancel) }()

	host := &languageHost{runner: runner}
	if args := flag.Args(); len(args) > 0 {
		host.engineAddress = args[0]
		if err := rpcutil.Healthcheck(ctx, host.engineAddress, 5*time.Minute, stop); err != nil {
			cmdutil.Exit(fmt.Errorf("cannot watch the engine: %w", err))
		}
	}
	handle, err := rpcutil.ServeWithOptions(rpcutil.ServeOptions{
		Cancel: cancel,
		Init: func(srv *grpc.Server) error {
			pulumirpc.RegisterLanguageRuntimeServer(srv, host)
			return nil
		},
	})
	if err != nil {
		cmdutil.Exit(fmt.Errorf("cannot serve the language host: %w", err))
	}
	// The CLI reads the port from the first line of stdout.
	fmt.Printf("%d\n", handle.Port)
	if err := <-handle.Done; err != nil {
		cmdutil.Exit(fmt.Errorf("language host stopped serving: %w", err))
	}
}

type languageHost struct {
	pulumirpc.UnimplementedLanguageRuntimeServer

	runner        string
	engineAddress string
}

// options reads Pulumi.yaml's `runtime.options` (virtualenv, toolchain) the way users write them.
func options(info *pulumirpc.ProgramInfo, forPlugin bool) (toolchain.PythonOptions, error) {
	opts := toolchain.PythonOptions{Root: info.GetRootDirectory(), ProgramDir: info.GetProgramDirectory()}
	raw := info.GetOptions().AsMap()
	if value, ok := raw["virtualenv"]; ok {
		text, isText := value.(string)
		if !isText {
			return opts, errors.New("runtime option virtualenv must be a string")
		}
		opts.Virtualenv = text
	}
	if value, ok := raw["toolchain"]; ok {
		switch value {
		case "pip":
			opts.Toolchain = toolchain.Pip
		case "poetry":
			opts.Toolchain = toolchain.Poetry
		case "uv":
			opts.Toolchain = toolchain.Uv
		default:
			return opts, fmt.Errorf("runtime option toolchain %v is not pip, poetry or uv", value)
		}
	}
	if _, ok := raw["typechecker"]; ok {
		return opts, errors.New("runtime option typechecker is not supported by this language host")
	}
	// A plugin (policy pack) without a virtualenv option uses `venv` beside it, as Pulumi documents.
	if forPlugin && opts.Virtualenv == "" && opts.Toolchain != toolchain.Poetry && opts.Toolchain != toolchain.Uv {
		opts.Virtualenv = "venv"
	}
	return opts, nil
}

// toolchainFor resolves the Python toolchain (pip, poetry, uv) and virtualenv a program or plugin runs with.
func toolchainFor(info *pulumirpc.ProgramInfo, forPlugin bool) (toolchain.Toolchain, error) {
	opts, err := options(info, forPlugin)
	if err != nil {
		return nil, err
	}
	return toolchain.ResolveToolchain(opts)
}

func (h *languageHost) Handshake(
	ctx context.Context, req *pulumirpc.LanguageHandshakeRequest,
) (*pulumirpc.LanguageHandshakeResponse, error) {
	h.engineAddress = req.GetEngineAddress()
	return &pulumirpc.LanguageHandshakeResponse{}, nil
}

func (h *languageHost) GetPluginInfo(context.Context, *emptypb.Empty) (*pulumirpc.PluginInfo, error) {
	return &pulumirpc.PluginInfo{Version: Version}, nil
}

// The engine loads each provider when the program first registers one of its resources, so no plugin needs to
// be announced ahead of the run.
func (h *languageHost) GetRequiredPlugins(
	context.Context, *pulumirpc.GetRequiredPluginsRequest,
) (*pulumirpc.GetRequiredPluginsResponse, error) {
	return &pulumirpc.GetRequiredPluginsResponse{}, nil
}

func (h *languageHost) GetRequiredPackages(
	context.Context, *pulumirpc.GetRequiredPackagesRequest,
) (*pulumirpc.GetRequiredPackagesResponse, error) {
	return &pulumirpc.GetRequiredPackagesResponse{}, nil
}

func (h *languageHost) GetProgramDependencies(
	ctx context.Context, req *pulumirpc.GetProgramDependenciesRequest,
) (*pulumirpc.GetProgramDependenciesResponse, error) {
	tc, err := toolchainFor(req.GetInfo(), false)
	if err != nil {
		return nil, err
	}
	packages, err := tc.ListPackages(ctx, req.GetTransitiveDependencies())
	if err != nil {
		return nil, err
	}
	result := make([]*pulumirpc.DependencyInfo, 0, len(packages))
	for _, p := range packages {
		result = append(result, &pulumirpc.DependencyInfo{Name: p.Name, Version: p.Version})
	}
	return &pulumirpc.GetProgramDependenciesResponse{Dependencies: result}, nil
}

func (h *languageHost) About(ctx context.Context, req *pulumirpc.AboutRequest) (*pulumirpc.AboutResponse, error) {
	tc, err := toolchainFor(req.GetInfo(), false)
	if err != nil {
		return nil, err
	}
	about, err := tc.About(ctx)
	if err != nil {
		return nil, err
	}
	return &pulumirpc.AboutResponse{Executable: about.PythonExecutable, Version: about.PythonVersion.String()}, nil
}

// InstallDependencies is `pulumi install`: create the virtualenv Pulumi.yaml names and install the program's
// requirements into it.
func (h *languageHost) InstallDependencies(
	req *pulumirpc.InstallDependenciesRequest, server pulumirpc.LanguageRuntime_InstallDependenciesServer,
) error {
	opts, err := options(req.GetInfo(), req.GetIsPlugin())
	if err != nil {
		return err
	}
	tc, err := toolchain.ResolveToolchain(opts)
	if err != nil {
		return err
	}
	closer, stdout, stderr, err := rpcutil.MakeInstallDependenciesStreams(server, req.GetIsTerminal())
	if err != nil {
		return err
	}
	defer closer.Close()
	if err := tc.InstallDependencies(server.Context(), req.GetInfo().GetProgramDirectory(),
		req.GetUseLanguageVersionTools(), true, stdout, stderr); err != nil {
		return err
	}
	return closer.Close()
}

// Run runs the program: `python run_program.py --monitor ... <entry point>` in the project's virtualenv, with the
// stack's config in the environment variables the Python SDK reads.
func (h *languageHost) Run(ctx context.Context, req *pulumirpc.RunRequest) (*pulumirpc.RunResponse, error) {
	tc, err := toolchainFor(req.GetInfo(), false)
	if err != nil {
		return nil, err
	}
	if err := tc.ValidateVenv(ctx); err != nil {
		return nil, err
	}
	args := []string{h.runner}
	for _, flagValue := range [][2]string{
		{"monitor", req.GetMonitorAddress()},
		{"engine", h.engineAddress},
		{"project", req.GetProject()},
		{"stack", req.GetStack()},
		{"root_directory", req.GetInfo().GetRootDirectory()},
		{"dry_run", strconv.FormatBool(req.GetDryRun())},
		{"parallel", strconv.Itoa(int(req.GetParallel()))},
		{"organization", req.GetOrganization()},
	} {
		if flagValue[1] != "" {
			args = append(args, "--"+flagValue[0], flagValue[1])
		}
	}
	args = append(args, req.GetInfo().GetEntryPoint())
	args = append(args, req.GetArgs()...)

	cmd, err := tc.Command(ctx, args...)
	if err != nil {
		return nil, err
	}
	cmd.Dir = req.GetPwd()
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 5 * time.Second
	config, err := json.Marshal(req.GetConfig())
	if err != nil {
		return nil, fmt.Errorf("cannot serialise the stack config: %w", err)
	}
	secretKeys := req.GetConfigSecretKeys()
	if secretKeys == nil {
		secretKeys = []string{}
	}
	secretJSON, err := json.Marshal(secretKeys)
	if err != nil {
		return nil, fmt.Errorf("cannot serialise the secret config keys: %w", err)
	}
	if cmd.Env == nil {
		cmd.Env = os.Environ()
	}
	cmd.Env = append(cmd.Env, "PULUMI_CONFIG="+string(config), "PULUMI_CONFIG_SECRET_KEYS="+string(secretJSON))

	err = cmd.Run()
	// Python may die without flushing; make sure what it wrote reaches the engine.
	_ = os.Stdout.Sync()
	_ = os.Stderr.Sync()
	if err == nil {
		return &pulumirpc.RunResponse{}, nil
	}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		if status, ok := exitErr.Sys().(syscall.WaitStatus); ok && status.ExitStatus() == exitAfterLoggedError {
			return &pulumirpc.RunResponse{Bail: true}, nil
		}
		return &pulumirpc.RunResponse{Error: fmt.Sprintf("program exited with code %d", exitErr.ExitCode())}, nil
	}
	return &pulumirpc.RunResponse{Error: fmt.Sprintf("could not start the program: %v", err)}, nil
}

// RunPlugin runs a plugin written in Python. A policy pack (kind analyzer) runs as `python -u -m pulumi.policy
// <args> <pack directory>` from the pack's directory, behind the SDK's policy proxy, which first receives the
// stack's configuration from the engine and hands it to the pack in its environment.
func (h *languageHost) RunPlugin(
	req *pulumirpc.RunPluginRequest, server pulumirpc.LanguageRuntime_RunPluginServer,
) error {
	ctx := server.Context()
	isAnalyzer := req.GetKind() == string(apitype.AnalyzerPlugin)
	tc, err := toolchainFor(req.GetInfo(), true)
	if err != nil {
		return err
	}
	directory := req.GetInfo().GetProgramDirectory()
	var args []string
	if isAnalyzer {
		args = append([]string{"-u", "-m", "pulumi.policy"}, req.GetArgs()...)
		args = append(args, directory)
	} else {
		args = append([]string{directory}, req.GetArgs()...)
	}
	cmd, err := tc.Command(ctx, args...)
	if err != nil {
		return err
	}
	closer, stdout, stderr, err := rpcutil.MakeRunPluginStreams(server, false)
	if err != nil {
		return err
	}
	defer closer.Close()
	if cmd.Env == nil {
		cmd.Env = os.Environ()
	}

	var proxy *sdk.PolicyProxy
	if isAnalyzer {
		cmd.Dir = directory
		proxy, stdout, err = sdk.NewPolicyProxy(ctx, stdout)
		if err != nil {
			return fmt.Errorf("cannot start the policy proxy: %w", err)
		}
		stack, err := proxy.AwaitConfiguration(ctx)
		if err != nil {
			return fmt.Errorf("cannot get the stack configuration: %w", err)
		}
		if stack != nil {
			cmd.Env = append(cmd.Env, policyEnvironment(stack)...)
		}
	} else {
		cmd.Dir = req.GetPwd()
	}
	cmd.Env = append(cmd.Env, req.GetEnv()...)
	cmd.Stdout, cmd.Stderr = stdout, stderr

	if err := cmd.Start(); err != nil {
		return fmt.Errorf("cannot start the plugin: %w", err)
	}
	if proxy != nil {
		err = proxy.Attach(ctx, cmd)
	} else {
		err = cmd.Wait()
	}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		return server.Send(&pulumirpc.RunPluginResponse{
			Output: &pulumirpc.RunPluginResponse_Exitcode{Exitcode: int32(exitErr.ExitCode())},
		})
	}
	if err != nil {
		return err
	}
	return closer.Close()
}

// policyEnvironment: the variables pulumi.policy reads to know the stack it checks.
func policyEnvironment(stack *pulumirpc.AnalyzerStackConfigureRequest) []string {
	env := []string{
		"PULUMI_PROJECT=" + stack.GetProject(),
		"PULUMI_STACK=" + stack.GetStack(),
		"PULUMI_DRY_RUN=" + strconv.FormatBool(stack.GetDryRun()),
	}
	if stack.GetOrganization() != "" {
		env = append(env, "PULUMI_ORGANIZATION="+stack.GetOrganization())
	}
	if config := stack.GetConfig(); config != nil {
		if text, err := json.Marshal(config); err == nil {
			env = append(env, "PULUMI_CONFIG="+string(text))
		}
	}
	return env
}
