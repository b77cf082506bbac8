"""LLMs in Loopline: a tiny Llama built here (no weights can be downloaded), vLLM's OpenAI server run as a
managed child process from a virtualenv of its own, and an async client of it."""
