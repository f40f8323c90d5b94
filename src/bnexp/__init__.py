"""bnexp: experiments that test what batch normalization really does."""
