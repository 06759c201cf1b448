"""Data: from the files a user has to the examples each stage trains on, in one direction.

    source name
      │  1 read      sources.py         files (JSONL/JSON/CSV/Parquet, .gz/.bz2/.xz/.zst), Hub, builtin:, stage: -> rows
      ▼
    rows
      │  2 shape     formats.py         which input format each row is (options.py: DataOptions)
      ▼
      │  3 units     fields.py          typed values out of a row's fields
      │              units.py           the conversation units: Demo, Pair, Rated, Vote
      │              oasst.py           OpenAssistant trees -> one Vote per assistant reply
      │              conversations.py   every row of a source -> units
      ▼
    conversation units
      │  4 filter    accounting.py      the ledger: every row used, or dropped with one reason
      │              filters.py         dedupe keys, token lengths, the split by conversation; the shared drops
      │              votes.py           votes on one reply pooled into one label (conflicts)
      ▼
      │  5 examples  sft_examples.py, preference_pairs.py, kto_examples.py
      ▼
    training_data.py   the whole path per target: rows -> examples (library, `posttrain data`),
                       a stage's config -> PreparedData (Stage.prepare_data)

Around the path: inspection.py (`posttrain data inspect`), writers.py (output files), cli.py.
Each module imports only modules above it in `MODULES` (tests/test_data_layout.py checks).
"""

MODULES = (
    "sources", "formats", "options",
    "fields", "units", "oasst", "conversations",
    "accounting", "filters", "votes",
    "sft_examples", "preference_pairs", "kto_examples",
    "training_data",
    "inspection", "writers", "cli",
)
