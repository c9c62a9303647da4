# A client of an ncps-edge cache: import it and set the two options.
#   services.ncps-edge-client = { url = "http://cache.example.org:8501"; publicKey = "cache.example.org-1:…"; };
{ config, lib, ... }:

let
  cfg = config.services.ncps-edge-client;
in
{
  options.services.ncps-edge-client = {
    url = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      description = "The nearest ncps-edge node.";
    };
    publicKey = lib.mkOption {
      type = lib.types.str;
      default = "";
      description = "The cache's public key (what its /pubkey prints).";
    };
  };

  config = lib.mkIf (cfg.url != null) {
    nix.settings.substituters = lib.mkBefore [ cfg.url ];
    nix.settings.trusted-public-keys = [ cfg.publicKey ];
  };
}
