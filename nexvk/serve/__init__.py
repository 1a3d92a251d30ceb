"""`nexvk serve`: an OpenAI-compatible HTTP server (app.py, FastAPI on uvicorn) over an
Engine (engine.py) that runs up to N sequences, each with its own compressed KV cache, with
their decode steps batched into one forward (nexvk/model/batch.py)."""
