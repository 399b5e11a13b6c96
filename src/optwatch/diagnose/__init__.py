"""Rules that turn numbers into alerts and verdicts: pure functions over records, no torch, no textual."""
