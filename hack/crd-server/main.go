// hotconf's Kubernetes 1.36 CRD server: the standalone k8s.io/apiextensions-apiserver
// (its cmd/apiextensions-apiserver), built from Debian's Go source packages by
// hack/crd-server-assets.sh. The test control plane runs it beside kube-apiserver 1.20 and puts
// it behind it as an aggregated API server for apiextensions.k8s.io and every CRD group, so
// custom resources get today's semantics (CEL rules, ratcheting, status managedFields with
// `subresource`) while core objects stay on 1.20.
//
// Two changes from upstream's main.go, both needed to use it on its own:
//   - root discovery (/apis) is served: upstream's Complete() turns it off because inside
//     kube-apiserver the aggregator serves it, so a client talking to this server directly
//     (the harness, kubectl) would discover nothing;
//   - /openapi/v2 is served as well as /openapi/v3: the 1.20 aggregator merges v2 only, and
//     kubectl's client-side validation against a 1.20 server reads v2.
package main

import (
	"context"
	"os"

	"github.com/spf13/cobra"
	"k8s.io/apiextensions-apiserver/pkg/apiserver"
	"k8s.io/apiextensions-apiserver/pkg/cmd/server/options"
	generatedopenapi "k8s.io/apiextensions-apiserver/pkg/generated/openapi"
	openapinamer "k8s.io/apiserver/pkg/endpoints/openapi"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/apiserver/pkg/util/openapi"
	scheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/component-base/cli"
)

func run(ctx context.Context, o *options.CustomResourceDefinitionsServerOptions) error {
	config, err := o.Config()
	if err != nil {
		return err
	}
	config.GenericConfig.OpenAPIConfig = genericapiserver.DefaultOpenAPIConfig(
		openapi.GetOpenAPIDefinitionsWithoutDisabledFeatures(generatedopenapi.GetOpenAPIDefinitions),
		openapinamer.NewDefinitionNamer(apiserver.Scheme, scheme.Scheme))
	completed := config.Complete()
	completed.GenericConfig.EnableDiscovery = true
	server, err := completed.New(genericapiserver.NewEmptyDelegate())
	if err != nil {
		return err
	}
	return server.GenericAPIServer.PrepareRun().RunWithContext(ctx)
}

func main() {
	ctx := genericapiserver.SetupSignalContext()
	o := options.NewCustomResourceDefinitionsServerOptions(os.Stdout, os.Stderr)
	cmd := &cobra.Command{
		Use:   "apiextensions-apiserver",
		Short: "hotconf's CRD server (k8s.io/apiextensions-apiserver with root discovery)",
		PersistentPreRunE: func(*cobra.Command, []string) error {
			return o.ServerRunOptions.ComponentGlobalsRegistry.Set()
		},
		RunE: func(c *cobra.Command, args []string) error {
			if err := o.Complete(); err != nil {
				return err
			}
			if err := o.Validate(); err != nil {
				return err
			}
			return run(c.Context(), o)
		},
	}
	cmd.SetContext(ctx)
	o.AddFlags(cmd.Flags())
	os.Exit(cli.Run(cmd))
}
