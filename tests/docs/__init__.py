"""Tests that the documents in docs/ specify what the code does."""
