"""The model: its network (timm), its checkpoint folder, its inference runtimes, loading it by URI, its card."""
