"""Generated protobuf and gRPC code for quota_authority.v1 (``make proto``); never edited."""
