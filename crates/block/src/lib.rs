//! The block layer every oxio front-end shares: a completion-based BlockBackend and its backends.
