"""Training steering vectors: contrastive pairs and where to read them, one batching helper, extraction and
aggregation (separate public steps), where reads are kept, torch.distributed, learned vectors, and
picking a condition (CAST's search)."""
