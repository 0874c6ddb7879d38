"""The Pulumi program's package: config model, components and the offline plan (imported as `stack`)."""
