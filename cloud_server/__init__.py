"""The cloud decoder service: finishes the forward pass on features it receives over gRPC."""
