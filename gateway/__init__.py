"""The API gateway: routing, replica pools, failover, auth at the edge, rate limits and load shedding."""
