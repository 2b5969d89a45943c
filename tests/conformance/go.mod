module sessionworker/conformance

go 1.21
