"""Tables, figures and the ablation report."""
