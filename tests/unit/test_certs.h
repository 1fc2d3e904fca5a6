// Throwaway ECDSA P-256 certificates made with OpenSSL at test time (no
// private key is committed): a CA, and leaves it signs for a server or client.
#pragma once

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>

namespace kv::test {

struct KeyPair {
  std::shared_ptr<EVP_PKEY> key;
  std::shared_ptr<X509> cert;
};

inline std::shared_ptr<EVP_PKEY> new_p256_key() {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  if (key == nullptr) throw std::runtime_error("EVP_EC_gen failed");
  return {key, EVP_PKEY_free};
}

inline void add_extension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  if (ext == nullptr) throw std::runtime_error("X509V3_EXT_conf_nid failed");
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
}

// Signed by `issuer` (self-signed when null). `days` may be negative: already expired.
inline KeyPair make_cert(const std::string& common_name, const KeyPair* issuer, bool is_ca, long days = 30) {
  KeyPair made{new_p256_key(), {X509_new(), X509_free}};
  X509* cert = made.cert.get();
  X509_set_version(cert, 2);
  static long serial = 1;
  ASN1_INTEGER_set(X509_get_serialNumber(cert), serial++);
  X509_gmtime_adj(X509_getm_notBefore(cert), days < 0 ? days * 2 * 86400 : -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert), days * 86400);
  X509_set_pubkey(cert, made.key.get());
  X509_NAME_add_entry_by_txt(X509_get_subject_name(cert), "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(common_name.c_str()), -1, -1, 0);
  X509* issuer_cert = issuer ? issuer->cert.get() : cert;
  X509_set_issuer_name(cert, X509_get_subject_name(issuer_cert));
  if (is_ca) {
    add_extension(cert, issuer_cert, NID_basic_constraints, "critical,CA:TRUE");
    add_extension(cert, issuer_cert, NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    add_extension(cert, issuer_cert, NID_basic_constraints, "CA:FALSE");
    add_extension(cert, issuer_cert, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1");
    add_extension(cert, issuer_cert, NID_ext_key_usage, "serverAuth,clientAuth");
  }
  if (X509_sign(cert, issuer ? issuer->key.get() : made.key.get(), EVP_sha256()) == 0) {
    throw std::runtime_error("X509_sign failed");
  }
  return made;
}

inline void write_pem(const std::filesystem::path& path, X509* cert) {
  FILE* file = std::fopen(path.c_str(), "w");
  PEM_write_X509(file, cert);
  std::fclose(file);
}

inline void write_pem(const std::filesystem::path& path, EVP_PKEY* key) {
  FILE* file = std::fopen(path.c_str(), "w");
  PEM_write_PrivateKey(file, key, nullptr, nullptr, 0, nullptr, nullptr);
  std::fclose(file);
}

// A temporary directory with ca.pem, server.pem + server.key (signed by the
// CA), client.pem + client.key (same CA), and other-ca.pem + stranger.pem +
// stranger.key (a client of a CA the server does not trust).
struct CertDir {
  std::filesystem::path dir;
  KeyPair ca, server, client, other_ca, stranger;

  explicit CertDir(const std::string& name) {
    dir = std::filesystem::temp_directory_path() / ("kvcache-" + name + "-" + std::to_string(getpid()));
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    ca = make_cert("kvcache test CA", nullptr, true);
    server = make_cert("localhost", &ca, false);
    client = make_cert("client", &ca, false);
    other_ca = make_cert("other CA", nullptr, true);
    stranger = make_cert("stranger", &other_ca, false);
    write_pem(path("ca.pem"), ca.cert.get());
    write_pem(path("other-ca.pem"), other_ca.cert.get());
    for (auto [stem, pair] : {std::pair<const char*, KeyPair*>{"server", &server}, {"client", &client},
                              {"stranger", &stranger}}) {
      write_pem(path(std::string(stem) + ".pem"), pair->cert.get());
      write_pem(path(std::string(stem) + ".key"), pair->key.get());
    }
  }
  ~CertDir() { std::filesystem::remove_all(dir); }
  std::string path(const std::string& file) const { return (dir / file).string(); }
};

}  // namespace kv::test
