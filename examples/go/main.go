// Calls bankauth from Go: create a user, fetch it back, issue a widget token
// and a data token, connect a bank (CreateAuthorizationUrl, the user's browser
// at the provider, ExchangeAuthorizationCode with the state and code), then
// show two errors with their google.rpc details.
//
// Usage: go run . [ADDRESS]     (default $BANKAUTH_ADDR or 127.0.0.1:50051)
// Set BANKAUTH_API_KEY to send `authorization: Bearer <key>` (not needed for the demo),
// and BANKAUTH_REDIRECT_URI to one of the provider's redirect_uris (default: the demo's).
// The stubs are the package buf generate writes to gen/go (see run.sh). Tokens are secrets: this prints
// their length and scopes, never the tokens themselves.
package main

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/bankauth/bankauth/gen/go/bankauth/v1"
)

func describeToken(rpc string, token *pb.AccessToken) {
	fmt.Printf("%s scopes=%s token_type=%s token_length=%d expire_time=%s\n",
		rpc, strings.Join(token.Scopes, ","), token.TokenType, len(token.AccessToken),
		token.ExpireTime.AsTime().UTC().Format(time.RFC3339))
}

// describeError prints a failed call's code, message and decoded google.rpc details.
func describeError(rpc string, err error) {
	st := status.Convert(err)
	fmt.Printf("%s error code=%s message=%s\n", rpc, code.Code_name[int32(st.Code())], st.Message())
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			keys := make([]string, 0, len(d.Metadata))
			for k := range d.Metadata {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			pairs := make([]string, len(keys))
			for i, k := range keys {
				pairs[i] = k + "=" + d.Metadata[k]
			}
			fmt.Printf("  ErrorInfo reason=%s domain=%s %s\n", d.Reason, d.Domain, strings.Join(pairs, " "))
		case *errdetails.BadRequest:
			for _, v := range d.FieldViolations {
				fmt.Printf("  BadRequest field=%s description=%s\n", v.Field, v.Description)
			}
		}
	}
}

// playTheBrowser does what the user's browser does with the URL: here the
// provider is the sandbox, which consents at once and redirects to
// redirectURI. A real app redirects the browser and reads code and state in
// its callback.
func playTheBrowser(location, redirectURI string) (code, state string, err error) {
	client := &http.Client{
		Timeout:       10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	for hop := 0; hop < 5; hop++ {
		response, err := client.Get(location)
		if err != nil {
			return "", "", err
		}
		response.Body.Close()
		location = response.Header.Get("Location")
		if (response.StatusCode != http.StatusFound && response.StatusCode != http.StatusSeeOther) || location == "" {
			return "", "", fmt.Errorf("the provider answered %d without redirecting", response.StatusCode)
		}
		if strings.HasPrefix(location, redirectURI) {
			callback, err := url.Parse(location)
			if err != nil {
				return "", "", err
			}
			return callback.Query().Get("code"), callback.Query().Get("state"), nil
		}
	}
	return "", "", fmt.Errorf("too many redirects")
}

func main() {
	address := os.Getenv("BANKAUTH_ADDR")
	if len(os.Args) > 1 {
		address = os.Args[1]
	} else if address == "" {
		address = "127.0.0.1:50051"
	}
	redirectURI := os.Getenv("BANKAUTH_REDIRECT_URI")
	if redirectURI == "" {
		redirectURI = "http://127.0.0.1/callback"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if key := os.Getenv("BANKAUTH_API_KEY"); key != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
	}

	// grpc.WithTransportCredentials(credentials.NewClientTLSFromFile(...)) when bankauth serves TLS.
	// Debian's grpc-go is 1.33: with 1.63 or later, write
	// grpc.NewClient(address, grpc.WithTransportCredentials(insecure.NewCredentials())).
	conn, err := grpc.Dial(address, grpc.WithInsecure())
	if err != nil {
		log.Fatalf("dial %s: %v", address, err)
	}
	defer conn.Close()
	auth := pb.NewAuthServiceClient(conn)

	created, err := auth.CreateUser(ctx, &pb.CreateUserRequest{
		ExternalId: "go-customer-1",
		Name:       &pb.PersonName{GivenName: "Alex", FamilyName: "Taylor"},
		Emails:     []*pb.Email{{Value: "alex@example.com", Primary: true}},
	})
	if err != nil {
		log.Fatalf("CreateUser: %v", err)
	}
	user := created.User
	fmt.Printf("CreateUser id=%s external_id=%s\n", user.Id, user.ExternalId)

	fetched, err := auth.GetUser(ctx, &pb.GetUserRequest{UserId: user.Id})
	if err != nil {
		log.Fatalf("GetUser: %v", err)
	}
	fmt.Printf("GetUser id=%s external_id=%s email=%s\n",
		fetched.User.Id, fetched.User.ExternalId, fetched.User.Emails[0].Value)

	widget, err := auth.IssueWidgetToken(ctx, &pb.IssueWidgetTokenRequest{UserId: user.Id})
	if err != nil {
		log.Fatalf("IssueWidgetToken: %v", err)
	}
	describeToken("IssueWidgetToken", widget.Token)

	data, err := auth.IssueDataToken(ctx, &pb.IssueDataTokenRequest{
		UserId: user.Id,
		Scopes: []string{"transactions:read:all", "accounts:read"},
	})
	if err != nil {
		log.Fatalf("IssueDataToken: %v", err)
	}
	describeToken("IssueDataToken", data.Token)

	// Connect a bank: bankauth signs the request; the user's browser opens the URL.
	started, err := auth.CreateAuthorizationUrl(ctx, &pb.CreateAuthorizationUrlRequest{
		UserId:      user.Id,
		RedirectUri: redirectURI,
		Purpose:     &pb.CreateAuthorizationUrlRequest_ConnectBank{ConnectBank: &pb.ConnectBank{}},
	})
	if err != nil {
		log.Fatalf("CreateAuthorizationUrl: %v", err)
	}
	fmt.Printf("CreateAuthorizationUrl state=%s\n", started.State)
	code, state, err := playTheBrowser(started.Url, redirectURI)
	if err != nil {
		log.Fatalf("following the authorization URL: %v", err)
	}
	exchanged, err := auth.ExchangeAuthorizationCode(ctx, &pb.ExchangeAuthorizationCodeRequest{State: state, Code: code})
	if err != nil {
		log.Fatalf("ExchangeAuthorizationCode: %v", err)
	}
	claims := exchanged.TokenSet.IdTokenClaims
	refresh := "no"
	if exchanged.TokenSet.RefreshToken != "" {
		refresh = "yes"
	}
	fmt.Printf("ExchangeAuthorizationCode sub=%s connection_id=%s scopes=%s refresh_token=%s\n",
		claims.Sub, claims.ConnectionId, strings.Join(exchanged.TokenSet.Scopes, ","), refresh)

	// Errors: a user that does not exist, and a scope outside the allow-list.
	if _, err := auth.GetUser(ctx, &pb.GetUserRequest{UserId: "no-such-user"}); err != nil {
		describeError("GetUser", err)
	}
	_, err = auth.IssueDataToken(ctx, &pb.IssueDataTokenRequest{UserId: user.Id, Scopes: []string{"payments:write"}})
	if err != nil {
		describeError("IssueDataToken", err)
	}
}
