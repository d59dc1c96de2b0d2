//! The read models by name, and the tables each one owns (with their columns besides `gen`), so
//! a rebuild can rebuild some and carry the others over, and drop a generation's rows.

/// One read model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Model {
    /// Sales by shop and day.
    SalesByShopDay,
    /// Top products.
    TopProducts,
    /// Stock summary.
    StockSummary,
}

impl Model {
    /// Every model.
    pub const ALL: [Model; 3] = [
        Model::SalesByShopDay,
        Model::TopProducts,
        Model::StockSummary,
    ];

    /// The model's name in `RebuildReadModels`.
    pub fn name(self) -> &'static str {
        match self {
            Model::SalesByShopDay => "sales_by_shop_day",
            Model::TopProducts => "top_products",
            Model::StockSummary => "stock_summary",
        }
    }

    /// The model named `name`.
    pub fn parse(name: &str) -> Option<Model> {
        Model::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The model's tables and their columns other than `gen`.
    pub fn tables(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Model::SalesByShopDay => &[
                (
                    "report_sales_day",
                    "day, store_id, currency, order_count, vend_count, units_sold, gross_minor, \
                     discount_minor, refund_minor",
                ),
                ("report_sale_ref", "reference_id, store_id"),
                (
                    "report_refund_unplaced",
                    "reference_id, day, currency, amount_minor",
                ),
            ],
            Model::TopProducts => &[
                (
                    "report_product_day",
                    "day, store_id, product_id, currency, units, revenue_minor",
                ),
                ("report_product_name", "product_id, name"),
            ],
            Model::StockSummary => &[
                ("report_stock", "location_id, product_id, on_hand, reserved"),
                (
                    "report_stock_out_day",
                    "location_id, product_id, day, units",
                ),
            ],
        }
    }
}
