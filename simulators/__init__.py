"""Virtual meters and fleets that speak the real protocols, with faults on demand."""
