"""Reviewers' reproductions of findings (see FINDINGS-*.md)."""
