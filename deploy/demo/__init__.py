"""`make demo`: a flash sale run end to end through the load tools, with a summary a person can read.

The stack comes up; loadtest/seed.py creates the SKU (1,000 units in the warehouse), the sale allocated from it
and a tiered coupon template scoped to it; the crowd is the load test's own (loadtest/locustfile.py's shoppers,
run by loadtest/crowd.py as the drills run them, each walking the chain once through the gateway): some claim a
coupon and name it in their purchase, most pay their order and the rest let it expire (the order replicas the
demo starts give 20 s to pay), so their units go back in stock; the demo repeats the holders' claims (same key:
same coupon; a new key: refused), the sale is stopped and settled with the warehouse; loadtest/checker.py then
judges the sale as it judges every drill, and the summary adds what became of the orders, the coupons and the
warehouse stock.
"""
