// The README's first calls from Go: a client generated from proto/ with
// Debian's protoc-gen-go and protoc-gen-go-grpc (generate.sh), on Debian's
// grpc-go, over TLS with a token. Run by clients/python/test_go_client.py
// against the running services, which passes where the catalog is
// (AGORA_CATALOG_ADDR), the CA (AGORA_CA_FILE) and tokens for staff and a
// customer (AGORA_STAFF_TOKEN, AGORA_CUSTOMER_TOKEN).
package agora_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	catalogv1 "agora/gen/catalog/v1"
	commonv1 "agora/gen/common/v1"
)

// bearer sends a token on every call, over TLS only.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return true }

func env(t *testing.T, name string) string {
	value := os.Getenv(name)
	if value == "" {
		t.Fatalf("%s is not set: clients/python/test_go_client.py runs this test against the services", name)
	}
	return value
}

// catalog dials the catalog over TLS trusting AGORA_CA_FILE, sending token
// when it is not empty.
func catalog(t *testing.T, token string) catalogv1.CatalogServiceClient {
	ca, err := os.ReadFile(env(t, "AGORA_CA_FILE"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca) {
		t.Fatal("no certificate in AGORA_CA_FILE")
	}
	options := []grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12})),
	}
	if token != "" {
		options = append(options, grpc.WithPerRPCCredentials(bearer(token)))
	}
	conn, err := grpc.Dial(env(t, "AGORA_CATALOG_ADDR"), options...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return catalogv1.NewCatalogServiceClient(conn)
}

func uuid() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	b[6], b[8] = b[6]&0x0f|0x40, b[8]&0x3f|0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

func TestFirstCalls(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	staff := catalog(t, env(t, "AGORA_STAFF_TOKEN"))
	family, err := staff.CreateFamily(ctx, &catalogv1.CreateFamilyRequest{
		Family: &catalogv1.Family{DisplayName: "Lamps"},
	})
	if err != nil {
		t.Fatalf("CreateFamily as staff: %v", err)
	}
	created, err := staff.CreateProduct(ctx, &catalogv1.CreateProductRequest{
		RequestId: uuid(),
		Product: &catalogv1.Product{
			DisplayName: "Floor lamp",
			FamilyId:    family.Family.FamilyId,
			Price:       &commonv1.Money{CurrencyCode: "EUR", AmountMinor: 8990},
		},
	})
	if err != nil {
		t.Fatalf("CreateProduct as staff: %v", err)
	}

	// Any signed-in customer reads the catalog, as the README's first call does.
	customer := catalog(t, env(t, "AGORA_CUSTOMER_TOKEN"))
	page, err := customer.ListProducts(ctx, &catalogv1.ListProductsRequest{PageSize: 3})
	if err != nil {
		t.Fatalf("ListProducts as a customer: %v", err)
	}
	if len(page.Products) == 0 {
		t.Fatal("ListProducts answered no product")
	}
	for _, p := range page.Products {
		t.Logf("%s %s %d %s", p.ProductId, p.DisplayName, p.Price.GetAmountMinor(), p.Price.GetCurrencyCode())
	}
	got, err := customer.GetProduct(ctx, &catalogv1.GetProductRequest{ProductId: created.Product.ProductId})
	if err != nil {
		t.Fatalf("GetProduct as a customer: %v", err)
	}
	if got.Product.DisplayName != "Floor lamp" || got.Product.State != catalogv1.ProductState_PRODUCT_STATE_ACTIVE {
		t.Fatalf("GetProduct answered %v", got.Product)
	}

	// What a customer may not do, and a call without a token.
	_, err = customer.DiscontinueProduct(ctx, &catalogv1.DiscontinueProductRequest{ProductId: created.Product.ProductId})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("DiscontinueProduct as a customer: %v, want PERMISSION_DENIED", err)
	}
	_, err = catalog(t, "").ListProducts(ctx, &catalogv1.ListProductsRequest{})
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("ListProducts without a token: %v, want UNAUTHENTICATED", err)
	}
}
