"""Text search on queries.v1 and the gateway's RPC on rpc.v1."""
