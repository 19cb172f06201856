-- Lines inserted into an order that the same transaction created need no cache invalidation:
-- nothing can have cached an order before it existed. Every `POST /api/v1/orders` inserts its
-- lines that way, and a NOTIFY makes PostgreSQL serialize commits (it holds one database-wide lock
-- from the notification's queueing until the commit is flushed), so skipping these keeps order
-- commits concurrent. Lines added to an existing order, and every update and delete, still notify.
CREATE OR REPLACE FUNCTION rainbow_api_invalidate_orders() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'orders' THEN
        PERFORM pg_notify('rainbow_api_invalidate', id::text) FROM (SELECT DISTINCT id FROM old_rows) t;
    ELSIF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('rainbow_api_invalidate', order_id::text)
        FROM (SELECT DISTINCT n.order_id FROM new_rows n JOIN orders o ON o.id = n.order_id
              WHERE NOT o.xmin = pg_current_xact_id()::xid) t;
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('rainbow_api_invalidate', order_id::text) FROM (SELECT DISTINCT order_id FROM old_rows) t;
    ELSE
        PERFORM pg_notify('rainbow_api_invalidate', order_id::text)
        FROM (SELECT order_id FROM old_rows UNION SELECT order_id FROM new_rows) t;
    END IF;
    RETURN NULL;
END;
$$;
