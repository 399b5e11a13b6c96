"""Rules that turn numbers into verdicts: pure functions over records, no torch, no textual."""
