"""The adapterd command line: serve (supervisor) and HTTP client commands."""
