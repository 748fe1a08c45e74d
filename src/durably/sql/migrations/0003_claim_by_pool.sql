-- The claim index also splits durable runs from task runs: a worker claims into two slot pools,
-- and a pool's claim must not read past the other pool's runs. With one queue holding 1,000,000
-- task runs, the durable pool's claim (which finds none) used to scan them all on every claim.
CREATE INDEX runs_claim_pool ON {schema}.runs (queue, durable, priority DESC, id)
    WHERE status = 'QUEUED';
DROP INDEX {schema}.runs_claim;
