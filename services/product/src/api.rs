//! The `product.v1.ProductService` implementation.

use mesh_contracts::events::v1::{ProductCreated, ProductDeleted, ProductUpdated};
use mesh_contracts::product::v1::product_service_server::ProductService;
use mesh_contracts::product::v1::*;
use mesh_runtime::Database;
use mesh_runtime::auth::{Identity, Role};
use mesh_runtime::domain::time::{self, now_us};
use mesh_runtime::domain::{ServiceError, page_token};
use mesh_runtime::outbox::Event;
use tonic::{Request, Response, Status};

use crate::cache::ProductCache;
use crate::error::ProductError;
use crate::local_cache::LocalCache;
use crate::store::{self, After, Filter};
use crate::{events, validate};

type Result<T> = std::result::Result<T, ProductError>;

/// Paths `UpdateProduct` accepts in its mask.
const UPDATABLE: &[&str] = &[
    "sku",
    "name",
    "description",
    "category_id",
    "price",
    "active",
    "image_url",
    "attributes",
];

/// The product service.
#[derive(Debug, Clone)]
pub struct ProductApi {
    db: Database,
    local: Option<LocalCache>,
    cache: Option<ProductCache>,
}

impl ProductApi {
    /// The service over `db`, reading through the Redis `cache` when set.
    pub fn new(db: Database, cache: Option<ProductCache>) -> Self {
        Self {
            db,
            local: None,
            cache,
        }
    }

    /// The same service reading through the in-process `local` tier first.
    #[must_use]
    pub fn with_local_cache(mut self, local: LocalCache) -> Self {
        self.local = Some(local);
        self
    }

    /// Product `id` (validated), from the nearest cache tier that has it.
    async fn read(&self, field: &'static str, id: &str) -> Result<Product> {
        let id = validate::id(field, id)?;
        if let Some(local) = &self.local
            && let Some(p) = local.get(&id)
        {
            return Ok(p);
        }
        if let Some(cache) = &self.cache
            && let Some(p) = cache.get(&id).await
        {
            if let Some(local) = &self.local {
                local.put(&p);
            }
            return Ok(p);
        }
        let product = store::get(self.db.pool(), &id)
            .await?
            .ok_or_else(|| ProductError::not_found(id))?;
        if let Some(local) = &self.local {
            local.put(&product);
        }
        if let Some(cache) = &self.cache {
            cache.put(&product).await;
        }
        Ok(product)
    }

    async fn drop_cached(&self, id: &str) {
        if let Some(local) = &self.local {
            local.invalidate(id);
        }
        if let Some(cache) = &self.cache
            && let Err(e) = cache.invalidate(id).await
        {
            tracing::warn!(error = %e, product = %id, "cache invalidation failed; the product event will retry it");
        }
    }

    /// Checks the sku is free and the category exists, in `tx`.
    async fn check_refs(&self, tx: &mut mesh_runtime::outbox::Tx, p: &Product) -> Result<()> {
        if store::sku_taken(tx, &p.sku, &p.id).await? {
            return Err(ProductError::SkuTaken(p.sku.clone()));
        }
        if !p.category_id.is_empty() && !store::category_exists(tx, &p.category_id).await? {
            return Err(ProductError::invalid(
                "product.category_id",
                format!("unknown category `{}`", p.category_id),
            ));
        }
        Ok(())
    }

    async fn create(&self, req: CreateProductRequest) -> Result<Product> {
        let input = req
            .product
            .ok_or_else(|| ProductError::invalid("product", "required"))?;
        let (currency_code, amount_minor) = validate::price(input.price.as_ref())?;
        let now = now_us();
        let product = Product {
            id: uuid::Uuid::now_v7().to_string(),
            sku: validate::sku(&input.sku)?,
            name: validate::name("product.name", &input.name)?,
            description: validate::description(&input.description)?,
            category_id: validate::optional_id("product.category_id", &input.category_id)?
                .unwrap_or_default(),
            price: Some(mesh_contracts::common::v1::Money {
                currency_code,
                amount_minor,
            }),
            active: input.active,
            image_url: validate::image_url(&input.image_url)?,
            attributes: input.attributes,
            create_time: None,
            update_time: None,
        };
        let mut tx = self.db.begin().await?;
        self.check_refs(&mut tx, &product).await?;
        store::upsert(&mut tx, &product, now, now, true)
            .await
            .map_err(|e| sku_conflict(e, &product.sku))?;
        let product = store::get_in(&mut tx, &product.id)
            .await?
            .ok_or_else(|| ProductError::not_found(product.id.clone()))?;
        tx.emit(Event::new(
            events::CREATED,
            &product.id,
            "ProductCreated",
            &ProductCreated {
                product: Some(product.clone()),
            },
        ))
        .await?;
        tx.commit().await?;
        Ok(product)
    }

    async fn update(&self, req: UpdateProductRequest) -> Result<Product> {
        let input = req
            .product
            .ok_or_else(|| ProductError::invalid("product", "required"))?;
        let id = validate::id("product.id", &input.id)?;
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            return Err(ProductError::invalid(
                "update_mask",
                "required: name the fields to change, e.g. \"price,active\"",
            ));
        }
        if let Some(bad) = paths.iter().find(|p| !UPDATABLE.contains(&p.as_str())) {
            return Err(ProductError::invalid(
                "update_mask",
                format!("`{bad}` cannot be updated; use one of {UPDATABLE:?}"),
            ));
        }
        let mut tx = self.db.begin().await?;
        let mut p = store::get_in(&mut tx, &id)
            .await?
            .ok_or_else(|| ProductError::not_found(id.clone()))?;
        for path in &paths {
            match path.as_str() {
                "sku" => p.sku = validate::sku(&input.sku)?,
                "name" => p.name = validate::name("product.name", &input.name)?,
                "description" => p.description = validate::description(&input.description)?,
                "category_id" => {
                    p.category_id =
                        validate::optional_id("product.category_id", &input.category_id)?
                            .unwrap_or_default()
                }
                "price" => {
                    let (currency_code, amount_minor) = validate::price(input.price.as_ref())?;
                    p.price = Some(mesh_contracts::common::v1::Money {
                        currency_code,
                        amount_minor,
                    });
                }
                "active" => p.active = input.active,
                "image_url" => p.image_url = validate::image_url(&input.image_url)?,
                "attributes" => p.attributes = input.attributes.clone(),
                _ => {}
            }
        }
        self.check_refs(&mut tx, &p).await?;
        let created =
            time::from_optional_timestamp("create_time", p.create_time.as_ref())?.unwrap_or(0);
        store::upsert(&mut tx, &p, created, now_us(), false)
            .await
            .map_err(|e| sku_conflict(e, &p.sku))?;
        let p = store::get_in(&mut tx, &id)
            .await?
            .ok_or_else(|| ProductError::not_found(id.clone()))?;
        tx.emit(Event::new(
            events::UPDATED,
            &id,
            "ProductUpdated",
            &ProductUpdated {
                product: Some(p.clone()),
                changed_fields: paths,
            },
        ))
        .await?;
        tx.commit().await?;
        self.drop_cached(&id).await;
        Ok(p)
    }

    async fn delete(&self, req: DeleteProductRequest) -> Result<()> {
        let id = validate::id("id", &req.id)?;
        let mut tx = self.db.begin().await?;
        let p = store::get_in(&mut tx, &id)
            .await?
            .ok_or_else(|| ProductError::not_found(id.clone()))?;
        store::delete(&mut tx, &id).await?;
        tx.emit(Event::new(
            events::DELETED,
            &id,
            "ProductDeleted",
            &ProductDeleted {
                product_id: id.clone(),
                sku: p.sku,
            },
        ))
        .await?;
        tx.commit().await?;
        self.drop_cached(&id).await;
        Ok(())
    }

    async fn list(&self, staff: bool, req: ListProductsRequest) -> Result<ListProductsResponse> {
        let limit = page_token::page_size(req.page_size, 50, 500)?;
        if req.include_inactive && !staff {
            return Err(ServiceError::PermissionDenied(
                "include_inactive: only staff may list inactive products".into(),
            )
            .into());
        }
        let query = req.query.trim();
        if query.chars().count() > 200 {
            return Err(ProductError::invalid("query", "at most 200 characters"));
        }
        let filter = Filter {
            category_id: validate::optional_id("category_id", &req.category_id)?,
            query: (!query.is_empty()).then(|| query.to_string()),
            include_inactive: req.include_inactive,
        };
        let listing = (
            "products",
            &filter.category_id,
            &filter.query,
            filter.include_inactive,
        );
        let after: Option<After> = page_token::decode(&req.page_token, &listing)?;
        let mut products = store::list(self.db.pool(), &filter, after.as_ref(), limit + 1).await?;
        let next_page_token = page_token::next_page(&mut products, limit, &listing, |p| {
            (p.name.clone(), p.id.clone())
        });
        Ok(ListProductsResponse {
            products,
            next_page_token,
        })
    }

    async fn create_category(&self, req: CreateCategoryRequest) -> Result<Category> {
        let input = req
            .category
            .ok_or_else(|| ProductError::invalid("category", "required"))?;
        let category = Category {
            id: uuid::Uuid::now_v7().to_string(),
            name: validate::name("category.name", &input.name)?,
            parent_id: validate::optional_id("category.parent_id", &input.parent_id)?
                .unwrap_or_default(),
            create_time: None,
        };
        let now = now_us();
        let mut tx = self.db.begin().await?;
        if !category.parent_id.is_empty()
            && !store::category_exists(&mut tx, &category.parent_id).await?
        {
            return Err(ProductError::invalid(
                "category.parent_id",
                format!("unknown category `{}`", category.parent_id),
            ));
        }
        store::insert_category(&mut tx, &category, now).await?;
        tx.commit().await?;
        Ok(Category {
            create_time: Some(prost_types::Timestamp {
                seconds: now / 1_000_000,
                nanos: ((now % 1_000_000) * 1000) as i32,
            }),
            ..category
        })
    }

    async fn list_categories(&self, req: ListCategoriesRequest) -> Result<ListCategoriesResponse> {
        let limit = page_token::page_size(req.page_size, 100, 1000)?;
        let parent = validate::optional_id("parent_id", &req.parent_id)?;
        let query = ("categories", &parent);
        let after: Option<After> = page_token::decode(&req.page_token, &query)?;
        let mut categories =
            store::list_categories(self.db.pool(), parent.as_deref(), after.as_ref(), limit + 1)
                .await?;
        let next_page_token = page_token::next_page(&mut categories, limit, &query, |c| {
            (c.name.clone(), c.id.clone())
        });
        Ok(ListCategoriesResponse {
            categories,
            next_page_token,
        })
    }
}

/// A unique violation on insert/update is the sku (the only unique column besides the id).
fn sku_conflict(e: ProductError, sku: &str) -> ProductError {
    match e {
        ProductError::Common(ServiceError::Database(mesh_runtime::DatabaseError::Conflict(_))) => {
            ProductError::SkuTaken(sku.to_string())
        }
        other => other,
    }
}

#[tonic::async_trait]
impl ProductService for ProductApi {
    async fn create_product(
        &self,
        r: Request<CreateProductRequest>,
    ) -> std::result::Result<Response<CreateProductResponse>, Status> {
        let product = self.create(r.into_inner()).await?;
        Ok(Response::new(CreateProductResponse {
            product: Some(product),
        }))
    }

    async fn get_product(
        &self,
        r: Request<GetProductRequest>,
    ) -> std::result::Result<Response<GetProductResponse>, Status> {
        let product = self.read("id", &r.get_ref().id).await?;
        Ok(Response::new(GetProductResponse {
            product: Some(product),
        }))
    }

    async fn batch_get_products(
        &self,
        r: Request<BatchGetProductsRequest>,
    ) -> std::result::Result<Response<BatchGetProductsResponse>, Status> {
        let ids = &r.get_ref().ids;
        if ids.is_empty() || ids.len() > 100 {
            return Err(ProductError::invalid("ids", "1 to 100 ids").into());
        }
        let mut products = Vec::with_capacity(ids.len());
        for id in ids {
            products.push(self.read("ids", id).await?);
        }
        Ok(Response::new(BatchGetProductsResponse { products }))
    }

    async fn list_products(
        &self,
        r: Request<ListProductsRequest>,
    ) -> std::result::Result<Response<ListProductsResponse>, Status> {
        let staff = Identity::of(&r).is_some_and(|i| i.has_any(&[Role::Staff]));
        Ok(Response::new(self.list(staff, r.into_inner()).await?))
    }

    async fn update_product(
        &self,
        r: Request<UpdateProductRequest>,
    ) -> std::result::Result<Response<UpdateProductResponse>, Status> {
        let product = self.update(r.into_inner()).await?;
        Ok(Response::new(UpdateProductResponse {
            product: Some(product),
        }))
    }

    async fn delete_product(
        &self,
        r: Request<DeleteProductRequest>,
    ) -> std::result::Result<Response<DeleteProductResponse>, Status> {
        self.delete(r.into_inner()).await?;
        Ok(Response::new(DeleteProductResponse {}))
    }

    async fn create_category(
        &self,
        r: Request<CreateCategoryRequest>,
    ) -> std::result::Result<Response<CreateCategoryResponse>, Status> {
        let category = ProductApi::create_category(self, r.into_inner()).await?;
        Ok(Response::new(CreateCategoryResponse {
            category: Some(category),
        }))
    }

    async fn list_categories(
        &self,
        r: Request<ListCategoriesRequest>,
    ) -> std::result::Result<Response<ListCategoriesResponse>, Status> {
        Ok(Response::new(
            ProductApi::list_categories(self, r.into_inner()).await?,
        ))
    }
}
