"""The edge device: local encoder, local noise, gRPC client to the cloud decoder."""
