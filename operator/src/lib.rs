//! Rolomesh operator (in progress).
