"""Model sources: pretrained backbones that qdeploy adapts into quadratic networks."""
