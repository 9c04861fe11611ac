"""What runs beside the shard actors of a node.

Each worker is started as `async def run_x(..., task_status=...)`, has its
own named bounds (a frozen Struct next to it), and logs and counts every
error it meets (workers/errors.py):

- outbox.py: the outbox relay (events table -> the partitions' streams) and
  stream trimming;
- webhook_ingest.py: streams -> durable delivery rows;
- webhook_delivery.py: the dispatcher, over webhook_sender.py (one SSRF-
  checked POST) and webhook_endpoints.py (the endpoint cache);
- events.py: those four for one node, and what the API asks of them;
- reconciliation.py: unknown outcomes asked of the network by reference;
- settlement.py: our captures and refunds against the network's report;
- purge.py: idempotency records past their lifetime;
- audit/: the audit archive (format, storage, export, verify, prune) and
  audit/archiving.py, its periodic export;
- node_workers.py: the workers every node runs, stopped with the node.

Workers import store, shards and engine; shards never imports workers.
"""
