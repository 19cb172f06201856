import java.util.Map;
import org.apache.iceberg.CatalogUtil;
import org.apache.iceberg.catalog.Catalog;
import org.apache.iceberg.rest.RESTCatalogAdapter;
import org.apache.iceberg.rest.RESTCatalogServlet;
import org.eclipse.jetty.server.Server;
import org.eclipse.jetty.server.ServerConnector;
import org.eclipse.jetty.servlet.ServletContextHandler;
import org.eclipse.jetty.servlet.ServletHolder;

/**
 * Apache Iceberg's REST catalog server (the servlet of its REST fixture) over a JDBC catalog on
 * SQLite, listening on 127.0.0.1 only (the fixture's own main binds every interface).
 *
 * <p>Usage: LocalRestCatalog PORT SQLITE_FILE WAREHOUSE_URI. Prints "listening on PORT" when ready.
 */
public class LocalRestCatalog {
  public static void main(String[] args) throws Exception {
    int port = Integer.parseInt(args[0]);
    Map<String, String> properties =
        Map.of(
            "type", "jdbc",
            "uri", "jdbc:sqlite:file:" + args[1],
            "warehouse", args[2],
            "jdbc.schema-version", "V1");
    Catalog catalog =
        CatalogUtil.buildIcebergCatalog(
            "rest_backend", properties, new org.apache.hadoop.conf.Configuration());
    Server server = new Server();
    ServerConnector connector = new ServerConnector(server);
    connector.setHost("127.0.0.1");
    connector.setPort(port);
    server.addConnector(connector);
    ServletContextHandler context = new ServletContextHandler(ServletContextHandler.NO_SESSIONS);
    context.addServlet(new ServletHolder(new RESTCatalogServlet(new RESTCatalogAdapter(catalog))), "/*");
    server.setHandler(context);
    server.start();
    System.out.println("listening on " + port);
    System.out.flush();
    server.join();
  }
}
