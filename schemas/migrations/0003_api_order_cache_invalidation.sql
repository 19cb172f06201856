-- Invalidation of the order API's in-memory cache of `GET /api/v1/orders/{id}` responses.
--
-- The API LISTENs on `rainbow_api_invalidate`. A payload is an order id (that order changed) or
-- '*' (something every order shows changed: a product, promotion, customer or payment method
-- name, or a TRUNCATE). Notifications are sent at commit, so a cached response is dropped as soon
-- as the change is visible. Statement-level triggers keep the cost to one call per statement; the
-- API's own order inserts touch none of the catalogue columns below.

-- Notifies the ids of the orders whose rows (`orders`) or lines (`orderdetails`) the statement
-- changed. Inserted orders need none: nothing can have cached an order before it existed.
CREATE FUNCTION rainbow_api_invalidate_orders() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'orders' THEN
        PERFORM pg_notify('rainbow_api_invalidate', id::text) FROM (SELECT DISTINCT id FROM old_rows) t;
    ELSIF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('rainbow_api_invalidate', order_id::text) FROM (SELECT DISTINCT order_id FROM new_rows) t;
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('rainbow_api_invalidate', order_id::text) FROM (SELECT DISTINCT order_id FROM old_rows) t;
    ELSE
        PERFORM pg_notify('rainbow_api_invalidate', order_id::text)
        FROM (SELECT order_id FROM old_rows UNION SELECT order_id FROM new_rows) t;
    END IF;
    RETURN NULL;
END;
$$;

CREATE FUNCTION rainbow_api_invalidate_all() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('rainbow_api_invalidate', '*');
    RETURN NULL;
END;
$$;

CREATE TRIGGER orders_api_invalidate_update AFTER UPDATE ON orders
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION rainbow_api_invalidate_orders();
CREATE TRIGGER orders_api_invalidate_delete AFTER DELETE ON orders
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION rainbow_api_invalidate_orders();
CREATE TRIGGER orderdetails_api_invalidate_insert AFTER INSERT ON orderdetails
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION rainbow_api_invalidate_orders();
CREATE TRIGGER orderdetails_api_invalidate_update AFTER UPDATE ON orderdetails
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION rainbow_api_invalidate_orders();
CREATE TRIGGER orderdetails_api_invalidate_delete AFTER DELETE ON orderdetails
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION rainbow_api_invalidate_orders();

CREATE TRIGGER orders_api_invalidate_truncate AFTER TRUNCATE ON orders
    FOR EACH STATEMENT EXECUTE FUNCTION rainbow_api_invalidate_all();
CREATE TRIGGER orderdetails_api_invalidate_truncate AFTER TRUNCATE ON orderdetails
    FOR EACH STATEMENT EXECUTE FUNCTION rainbow_api_invalidate_all();
CREATE TRIGGER products_api_invalidate AFTER UPDATE OF name ON products
    FOR EACH STATEMENT EXECUTE FUNCTION rainbow_api_invalidate_all();
CREATE TRIGGER promotions_api_invalidate AFTER UPDATE OF name, coupon_type, price_treatment ON promotions
    FOR EACH STATEMENT EXECUTE FUNCTION rainbow_api_invalidate_all();
CREATE TRIGGER customers_api_invalidate AFTER UPDATE OF name, email ON customers
    FOR EACH STATEMENT EXECUTE FUNCTION rainbow_api_invalidate_all();
CREATE TRIGGER payments_api_invalidate AFTER UPDATE OF method ON payments
    FOR EACH STATEMENT EXECUTE FUNCTION rainbow_api_invalidate_all();
