"""dramasearch: encode with DRAMA, index at Matryoshka dims, search."""
