"""A stand-in for vLLM (tests only): see entrypoints/openai/api_server.py."""
