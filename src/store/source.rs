//! The sender's side of the store seam (filled in by the sender split).
