"""The feedback loop: people judge a run's models, and their judgements become training data.

    posttrain chat MODEL           terminal chat (chat.py), judgements with /up /down /edit /flag
    posttrain serve RUN            a local web page (server.py, static/): chat, arena, rate, edit, flag
    posttrain feedback import      Open WebUI and Chatbot Arena logs into a store (importers.py)
      │
      ▼
    store.py                       one SQLite file (WAL) of judgements, each with its answer's provenance
      │
      ▼
    posttrain feedback export      thumbs | pairs | kto | openai JSONL (exporters.py) a recipe's data: reads

models.py loads the models people talk to (a run's stage directory or a model directory) and
generates their answers. The training core imports only store.py and exporters.py (a recipe's
data may be a store: posttrain/data/sources.py); never the chat, the server or the models.
"""
