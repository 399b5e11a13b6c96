"""The Textual dashboard. It reads the store and never imports torch."""
