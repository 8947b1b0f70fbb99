"""Models of the IQE gateway and the infusion pumps it enrolls."""
