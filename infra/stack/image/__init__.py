"""The server image that `pulumi up` builds: its build context, a probe for the Docker engine, the build itself."""
