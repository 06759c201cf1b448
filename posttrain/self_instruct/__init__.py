"""Self-instruct (Wang et al. 2022, arXiv:2212.10560): a teacher model writes new instruction data from seed tasks.

The `self_instruct` stage kind (posttrain/stages/self_instruct.py) drives it; this package holds its parts:
  seeds     read the seed tasks (the self-instruct seed format, or any SFT data)
  prompts   what the teacher is asked at each step, and how its replies are read
  filters   the paper's filters: ROUGE-L novelty, length bounds, unsupported modalities, bad outputs
  teachers  a local chat model (batched generation) or an OpenAI-compatible endpoint
  ledger    the append-only candidates file, committed a round at a time, that a killed run resumes from
"""
