-- A bulk command request can be retried safely: the same idempotency key returns the bulk request it
-- created the first time (the console's form and the API's Idempotency-Key header send one).
ALTER TABLE command_bulk ADD COLUMN idempotency_key text UNIQUE;
