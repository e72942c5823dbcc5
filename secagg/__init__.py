"""The protocol core: secure aggregation (Bonawitz et al. 2017) with SecAgg+ graphs (Bell et al. 2020), pure and sans-I/O."""
