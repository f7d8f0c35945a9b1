"""Everything that imports torch: base model, adapter modules, routing, strategies, worker loops."""
