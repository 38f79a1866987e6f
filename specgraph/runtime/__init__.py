"""What picks and runs specialized code: dispatcher, caches, explain."""
