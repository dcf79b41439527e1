"""ldfa.figures: experiments and plots that regenerate the paper's figures."""
