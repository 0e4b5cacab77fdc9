"""`make demo`: a flash sale run end to end through the load tools, with a summary a person can read.

The stack comes up; loadtest/seed.py creates the SKU (1,000 units in the warehouse), the sale allocated from it
and a tiered coupon template scoped to it; some buyers claim a coupon and name it in their purchase; the crowd
buys through the gateway; the buyers pay some orders and let the rest expire (the order replicas the demo starts
give 20 s to pay), so their units go back in stock; the sale is stopped and settled with the warehouse;
loadtest/checker.py then judges the sale as it judges every drill, and the summary adds what became of the
orders, the coupons and the warehouse stock.
"""
