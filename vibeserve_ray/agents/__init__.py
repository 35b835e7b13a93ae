"""The agents' runtime, shared by every role: the API client and the gateway that alone
holds the key, the ledger and its spend limit, the tool-use session, its transcript,
the tools (the text editor confined to the candidate, the skills library) and the
roles' system prompts. The roles themselves live beside their steps of the loops:
the Implementer, the Judge's review and the Evaluator's reading in `inner/`, the
Orchestrator in `search/`.
"""
