"""Built-in certifiers."""
