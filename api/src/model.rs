//! The API's data: the validated order request, the order as returned, and list pages.
//!
//! Requests are parsed from a generic JSON value rather than derived, so every error can name the
//! exact field and say what was expected there (and unknown fields are refused, not ignored).

use crate::error::ApiError;
use chrono::{DateTime, NaiveDate, Utc};
use rainbow_schemas::pricing::{CouponType, LineAmounts};
use rainbow_schemas::Money;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::HashSet;

/// Largest quantity of one product in one order.
pub const MAX_QUANTITY: i64 = 10_000;
/// Largest number of lines in one order.
pub const MAX_LINES: usize = 1_000;
/// Default and largest page size of `GET /api/v1/orders`.
pub const DEFAULT_PAGE_LIMIT: i64 = 50;
pub const MAX_PAGE_LIMIT: i64 = 500;

/// A valid `POST /api/v1/orders` body. Field names on the wire are the seed's (`customerId`,
/// `payment_id`, `products[].productId`, `products[].quantity`); the other casing of each is
/// accepted as an alias.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewOrder {
    pub customer_id: i64,
    pub payment_id: i64,
    pub lines: Vec<NewLine>,
    /// When the order happened, if not now: for backfills and load generation.
    pub created_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct NewLine {
    pub product_id: i64,
    pub quantity: i64,
}

const ORDER_FIELDS: [(&str, &str); 4] = [
    ("customerId", "customer_id"),
    ("payment_id", "paymentId"),
    ("products", "products"),
    ("createdAt", "created_at"),
];
const LINE_FIELDS: [(&str, &str); 2] = [("productId", "product_id"), ("quantity", "quantity")];

/// Earliest accepted `createdAt`: the warehouse's date dimension starts in 2000.
const EARLIEST_ORDER: &str = "2000-01-01T00:00:00Z";

impl NewOrder {
    /// Validates a parsed JSON body. `now` bounds `createdAt` (at most one minute ahead).
    pub fn from_json(body: &Value, now: DateTime<Utc>) -> Result<NewOrder, ApiError> {
        let object = body.as_object().ok_or_else(|| {
            ApiError::invalid("$", format!("the body must be a JSON object, not {}", kind(body)))
        })?;
        reject_unknown(object, &ORDER_FIELDS, "")?;
        let customer_id = positive_id(required(object, ORDER_FIELDS[0], "")?, "customerId")?;
        let payment_id = positive_id(required(object, ORDER_FIELDS[1], "")?, "payment_id")?;
        let products = required(object, ORDER_FIELDS[2], "")?;
        let products = products.as_array().ok_or_else(|| {
            ApiError::invalid("products", format!("expected an array of order lines, got {}", kind(products)))
        })?;
        if products.is_empty() {
            return Err(ApiError::invalid("products", "an order needs at least one product"));
        }
        if products.len() > MAX_LINES {
            return Err(ApiError::invalid(
                "products",
                format!("an order has at most {MAX_LINES} lines, got {}", products.len()),
            ));
        }
        let mut seen = HashSet::with_capacity(products.len());
        let mut lines = Vec::with_capacity(products.len());
        for (i, line) in products.iter().enumerate() {
            let path = format!("products[{i}]");
            let line = line.as_object().ok_or_else(|| {
                ApiError::invalid(
                    &path,
                    format!("expected an object with productId and quantity, got {}", kind(line)),
                )
            })?;
            reject_unknown(line, &LINE_FIELDS, &path)?;
            let product_id =
                positive_id(required(line, LINE_FIELDS[0], &path)?, &format!("{path}.productId"))?;
            let quantity_value = required(line, LINE_FIELDS[1], &path)?;
            let quantity = integer(quantity_value, &format!("{path}.quantity"))?;
            if !(1..=MAX_QUANTITY).contains(&quantity) {
                return Err(ApiError::invalid(
                    format!("{path}.quantity"),
                    format!("quantity must be between 1 and {MAX_QUANTITY}, got {quantity}"),
                ));
            }
            if !seen.insert(product_id) {
                return Err(ApiError::invalid(
                    format!("{path}.productId"),
                    format!(
                        "product {product_id} appears more than once; put the total quantity on one line"
                    ),
                ));
            }
            lines.push(NewLine { product_id, quantity });
        }
        let created_at = match field(object, ORDER_FIELDS[3]) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => {
                let at = DateTime::parse_from_rfc3339(s)
                    .map_err(|e| {
                        ApiError::invalid(
                            "createdAt",
                            format!("expected an RFC 3339 timestamp, got {s:?}: {e}"),
                        )
                    })?
                    .with_timezone(&Utc);
                let earliest =
                    DateTime::parse_from_rfc3339(EARLIEST_ORDER).expect("constant").with_timezone(&Utc);
                if at < earliest || at > now + chrono::Duration::minutes(1) {
                    return Err(ApiError::invalid(
                        "createdAt",
                        format!("createdAt must be between {EARLIEST_ORDER} and now, got {s}"),
                    ));
                }
                Some(at)
            }
            Some(other) => {
                return Err(ApiError::invalid("createdAt", format!("expected a string, got {}", kind(other))))
            }
        };
        Ok(NewOrder { customer_id, payment_id, lines, created_at })
    }

    /// The canonical form stored with an idempotency key: two requests are "the same" when these
    /// are equal.
    pub fn canonical(&self) -> Value {
        serde_json::to_value(self).expect("NewOrder serializes")
    }
}

fn field<'a>(object: &'a Map<String, Value>, (name, alias): (&str, &str)) -> Option<&'a Value> {
    object.get(name).or_else(|| object.get(alias))
}

fn required<'a>(
    object: &'a Map<String, Value>,
    names: (&str, &str),
    parent: &str,
) -> Result<&'a Value, ApiError> {
    if object.contains_key(names.0) && object.contains_key(names.1) && names.0 != names.1 {
        return Err(ApiError::invalid(
            join(parent, names.0),
            format!("give either {} or {}, not both", names.0, names.1),
        ));
    }
    field(object, names)
        .ok_or_else(|| ApiError::invalid(join(parent, names.0), format!("missing field {}", names.0)))
}

fn reject_unknown(object: &Map<String, Value>, known: &[(&str, &str)], parent: &str) -> Result<(), ApiError> {
    match object.keys().find(|k| !known.iter().any(|(a, b)| k == a || k == b)) {
        Some(k) => {
            let expected: Vec<&str> = known.iter().map(|(a, _)| *a).collect();
            Err(ApiError::invalid(
                join(parent, k),
                format!("unknown field {k:?}; expected {}", expected.join(", ")),
            ))
        }
        None => Ok(()),
    }
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}.{name}")
    }
}

fn integer(value: &Value, path: &str) -> Result<i64, ApiError> {
    value.as_i64().ok_or_else(|| match value {
        Value::Number(n) => ApiError::invalid(path, format!("expected an integer, got {n}")),
        other => ApiError::invalid(path, format!("expected an integer, got {}", kind(other))),
    })
}

fn positive_id(value: &Value, path: &str) -> Result<i64, ApiError> {
    let id = integer(value, path)?;
    if id <= 0 {
        return Err(ApiError::invalid(path, format!("ids are positive integers, got {id}")));
    }
    Ok(id)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses an order id from a path segment: a positive 64-bit integer.
pub fn parse_order_id(raw: &str) -> Result<i64, ApiError> {
    match raw.parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(ApiError::invalid("id", format!("order ids are positive integers, got {raw:?}"))),
    }
}

/// An order as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    pub id: i64,
    pub customer: CustomerRef,
    pub payment: PaymentRef,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub lines: Vec<LineView>,
    pub totals: Totals,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CustomerRef {
    pub id: i64,
    pub name: String,
    pub email: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PaymentRef {
    pub id: i64,
    pub method: String,
}

/// One line. `unitPrice` and `promotion` are what the line captured when the order was placed;
/// the discount applies the promotion's terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LineView {
    pub product_id: i64,
    pub product_name: String,
    pub quantity: i64,
    #[serde(with = "money_str")]
    pub unit_price: Money,
    pub promotion: Option<PromotionRef>,
    #[serde(with = "money_str")]
    pub discount_unit_price: Money,
    #[serde(with = "money_str")]
    pub net_unit_price: Money,
    #[serde(with = "money_str")]
    pub extended_sales_amount: Money,
    #[serde(with = "money_str")]
    pub extended_discount_amount: Money,
    #[serde(with = "money_str")]
    pub net_amount: Money,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PromotionRef {
    pub id: i64,
    pub name: String,
    pub coupon_type: CouponType,
    #[serde(with = "money_str")]
    pub price_treatment: Money,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub lines: i64,
    pub quantity: i64,
    #[serde(with = "money_str")]
    pub sales_amount: Money,
    #[serde(with = "money_str")]
    pub discount_amount: Money,
    #[serde(with = "money_str")]
    pub net_amount: Money,
}

impl LineView {
    pub fn new(
        product_id: i64,
        product_name: String,
        quantity: i64,
        promotion: Option<PromotionRef>,
        amounts: LineAmounts,
    ) -> LineView {
        LineView {
            product_id,
            product_name,
            quantity,
            unit_price: amounts.regular_unit_price,
            promotion,
            discount_unit_price: amounts.discount_unit_price,
            net_unit_price: amounts.net_unit_price,
            extended_sales_amount: amounts.extended_sales_amount,
            extended_discount_amount: amounts.extended_discount_amount,
            net_amount: amounts.extended_net_amount(),
        }
    }
}

impl Totals {
    pub fn of(lines: &[LineView]) -> Totals {
        lines.iter().fold(Totals::default(), |t, l| Totals {
            lines: t.lines + 1,
            quantity: t.quantity + l.quantity,
            sales_amount: Money(t.sales_amount.0 + l.extended_sales_amount.0),
            discount_amount: Money(t.discount_amount.0 + l.extended_discount_amount.0),
            net_amount: Money(t.net_amount.0 + l.net_amount.0),
        })
    }
}

/// Money on the wire: a decimal string with two places ("250000.00"), exact in every JSON parser.
mod money_str {
    use rainbow_schemas::Money;
    use serde::Serializer;

    pub fn serialize<S: Serializer>(m: &Money, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(m)
    }
}

/// One entry of a list page: the order's header and line totals; the full order is at `href`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderSummary {
    pub id: i64,
    pub customer_id: i64,
    pub payment_id: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub lines: i64,
    pub quantity: i64,
    #[serde(with = "money_str")]
    pub sales_amount: Money,
    pub href: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderPage {
    pub orders: Vec<OrderSummary>,
    /// Cursor of the next page (pass it as `cursor`), or null on the last page.
    pub next: Option<String>,
}

/// Position in the list order (newest first): `(created_at, id)` of the last order returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: i64,
}

impl Cursor {
    /// `<microseconds since the epoch>.<id>`; opaque to clients.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.created_at.timestamp_micros(), self.id)
    }

    pub fn decode(raw: &str) -> Result<Cursor, ApiError> {
        let bad = || ApiError::invalid("cursor", format!("{raw:?} is not a cursor returned by this API"));
        let (micros, id) = raw.split_once('.').ok_or_else(bad)?;
        let created_at =
            DateTime::from_timestamp_micros(micros.parse().map_err(|_| bad())?).ok_or_else(bad)?;
        let id = id.parse().ok().filter(|id: &i64| *id > 0).ok_or_else(bad)?;
        Ok(Cursor { created_at, id })
    }
}

/// The validated query of `GET /api/v1/orders`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub limit: i64,
    pub after: Option<Cursor>,
    pub customer_id: Option<i64>,
    /// Inclusive lower bound on `createdAt`.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive upper bound on `createdAt`.
    pub to: Option<DateTime<Utc>>,
}

impl ListQuery {
    pub const PARAMETERS: [&'static str; 5] = ["limit", "cursor", "customerId", "from", "to"];

    pub fn parse(pairs: &[(String, String)]) -> Result<ListQuery, ApiError> {
        let mut q =
            ListQuery { limit: DEFAULT_PAGE_LIMIT, after: None, customer_id: None, from: None, to: None };
        let mut seen = HashSet::new();
        for (key, value) in pairs {
            let key = if key == "customer_id" { "customerId" } else { key.as_str() };
            if !seen.insert(key.to_string()) {
                return Err(ApiError::invalid(key, format!("query parameter {key} is given more than once")));
            }
            match key {
                "limit" => {
                    q.limit =
                        value.parse().ok().filter(|l| (1..=MAX_PAGE_LIMIT).contains(l)).ok_or_else(|| {
                            ApiError::invalid(
                                "limit",
                                format!("limit must be an integer from 1 to {MAX_PAGE_LIMIT}, got {value:?}"),
                            )
                        })?
                }
                "cursor" => q.after = Some(Cursor::decode(value)?),
                "customerId" => q.customer_id = Some(parse_positive(value, "customerId")?),
                "from" => q.from = Some(parse_instant(value, "from")?),
                "to" => q.to = Some(parse_instant(value, "to")?),
                other => {
                    return Err(ApiError::invalid(
                        other,
                        format!(
                            "unknown query parameter {other:?}; expected {}",
                            Self::PARAMETERS.join(", ")
                        ),
                    ))
                }
            }
        }
        if let (Some(from), Some(to)) = (q.from, q.to) {
            if from >= to {
                return Err(ApiError::invalid("to", "the range is empty: `to` must be after `from`"));
            }
        }
        Ok(q)
    }
}

fn parse_positive(raw: &str, name: &str) -> Result<i64, ApiError> {
    raw.parse()
        .ok()
        .filter(|v: &i64| *v > 0)
        .ok_or_else(|| ApiError::invalid(name, format!("{name} must be a positive integer, got {raw:?}")))
}

/// An RFC 3339 timestamp, or a date (`YYYY-MM-DD`, midnight UTC).
fn parse_instant(raw: &str, name: &str) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(at) = DateTime::parse_from_rfc3339(raw) {
        return Ok(at.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight").and_utc())
        .map_err(|_| {
            ApiError::invalid(
                name,
                format!("{name} must be a date (2024-05-31) or an RFC 3339 timestamp, got {raw:?}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<NewOrder, ApiError> {
        NewOrder::from_json(&v, Utc::now())
    }

    fn field_of(v: Value) -> String {
        parse(v).unwrap_err().field.unwrap()
    }

    #[test]
    fn accepts_the_seed_body_and_aliases() {
        let a =
            parse(json!({"customerId": 1, "payment_id": 2, "products": [{"productId": 3, "quantity": 4}]}))
                .unwrap();
        assert_eq!(
            a,
            NewOrder {
                customer_id: 1,
                payment_id: 2,
                lines: vec![NewLine { product_id: 3, quantity: 4 }],
                created_at: None
            }
        );
        let b =
            parse(json!({"customer_id": 1, "paymentId": 2, "products": [{"product_id": 3, "quantity": 4}]}))
                .unwrap();
        assert_eq!(a.canonical(), b.canonical());
    }

    #[test]
    fn names_the_offending_field() {
        assert_eq!(field_of(json!([1])), "$");
        assert_eq!(
            field_of(json!({"payment_id": 2, "products": [{"productId": 3, "quantity": 1}]})),
            "customerId"
        );
        assert_eq!(field_of(json!({"customerId": "1", "payment_id": 2, "products": []})), "customerId");
        assert_eq!(field_of(json!({"customerId": 1, "payment_id": 2, "products": []})), "products");
        let line = |q: Value| json!({"customerId": 1, "payment_id": 2, "products": [{"productId": 3, "quantity": q}]});
        assert_eq!(field_of(line(json!(0))), "products[0].quantity");
        assert_eq!(field_of(line(json!(10_001))), "products[0].quantity");
        assert_eq!(field_of(line(json!(1.5))), "products[0].quantity");
        assert!(parse(line(json!(10_000))).is_ok());
        let dup = json!({"customerId": 1, "payment_id": 2,
                         "products": [{"productId": 3, "quantity": 1}, {"productId": 3, "quantity": 2}]});
        assert_eq!(field_of(dup), "products[1].productId");
        let extra =
            json!({"customerId": 1, "payment_id": 2, "products": [{"productId": 3, "quantity": 1}], "x": 1});
        assert_eq!(field_of(extra), "x");
        let future = json!({"customerId": 1, "payment_id": 2, "products": [{"productId": 3, "quantity": 1}],
                            "createdAt": "2999-01-01T00:00:00Z"});
        assert_eq!(field_of(future), "createdAt");
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c =
            Cursor { created_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(), id: 42 };
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        for bad in ["", "x", "1.0", "1.-2", "abc.3"] {
            assert_eq!(Cursor::decode(bad).unwrap_err().field.as_deref(), Some("cursor"), "{bad}");
        }
    }

    #[test]
    fn list_query_bounds() {
        let q = |pairs: &[(&str, &str)]| {
            ListQuery::parse(&pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>())
        };
        assert_eq!(q(&[]).unwrap().limit, DEFAULT_PAGE_LIMIT);
        assert_eq!(q(&[("limit", "500")]).unwrap().limit, 500);
        assert!(q(&[("limit", "501")]).is_err());
        assert!(q(&[("limit", "0")]).is_err());
        assert_eq!(q(&[("customer_id", "7")]).unwrap().customer_id, Some(7));
        assert!(q(&[("from", "2024-02-01"), ("to", "2024-01-01")]).is_err());
        assert_eq!(q(&[("sort", "asc")]).unwrap_err().field.as_deref(), Some("sort"));
    }
}
