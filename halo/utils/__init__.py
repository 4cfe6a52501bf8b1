"""Small shared infrastructure with no knowledge of hands: atomic files, tables, keyed caches,
progress, allow-listed unpickling, allocator tuning."""
